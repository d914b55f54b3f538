"""Sensing commands (城市感知): `cityos simulate` drives the demo's virtual devices; `cityos sensing`
lists devices with their status, issues device credentials, applies the retention periods and
writes the MQTT broker's password and ACL files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityos.core import auth
from cityos.core.access import Actor
from cityos.core.cli import cli_actor, cli_session, console, err_console, settings_or_exit
from cityos.core.errors import Invalid, NotFound
from cityos.core.service import user_by_name
from cityos.sensing import ingest, service, simulator, timeseries
from cityos.sensing.models import Datastream, Thing

sensing_app = typer.Typer(help="Sensing: devices, credentials, retention / 城市感知：设备、凭证、保留期",
                          no_args_is_help=True)

As = Annotated[str | None, typer.Option("--as", help="act as this user (their department's rights); "
                                                     "default: the platform")]
DevicesFile = Annotated[Path | None, typer.Option(
    "--devices-file", help="the devices and their secrets (default: <data_dir>/sensing-devices.json, "
                           "written by `cityos demo`)")]


def _actor(session: Session, username: str | None) -> Actor:
    if username is None:
        return cli_actor()
    user = user_by_name(session, username)
    if not user.is_active:
        raise Invalid("as", f"user {username} is deactivated / 用户已停用")
    return auth.user_actor(user)


def simulate(
    devices: Annotated[int | None, typer.Option(
        "--devices", min=1, help="how many devices (default: all in the file; more cycles over them as "
                                 "virtual copies writing to the same streams — a load test)")] = None,
    rate: Annotated[float | None, typer.Option(
        min=0.01, help="readings per second in all (default: every device at its own interval)")] = None,
    via: Annotated[str, typer.Option(help="http (POST /api/sensing/observations) or mqtt")] = "http",
    url: Annotated[str | None, typer.Option(help="the server (default: from settings host and port)")] = None,
    broker: Annotated[str | None, typer.Option(help="the MQTT broker, mqtt://host:port (default: mqtt_url, "
                                                     "else mqtt://127.0.0.1:1883)")] = None,
    duration: Annotated[float | None, typer.Option(min=0.1, help="stop after this many seconds "
                                                                  "(default: until Ctrl-C)")] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed gives the same readings")
                    ] = simulator.SEED,
    devices_file: DevicesFile = None,
) -> None:
    """Send readings from the demo city's virtual devices until Ctrl-C (设备模拟器)."""
    if via not in ("http", "mqtt"):
        err_console.print("[red]--via: http or mqtt / 须为 http 或 mqtt[/red]")
        raise typer.Exit(2)
    settings = settings_or_exit()
    path = devices_file or Path(settings.data_dir) / simulator.DEVICES_FILE
    if not path.exists():
        err_console.print(f"[red]{path}: no devices file; build the demo first (cityos demo --build-only) / "
                          "没有设备清单，请先构建演示城市[/red]")
        raise typer.Exit(1)
    found = simulator.load_devices(path)
    url = url or simulator.local_url(settings.host, settings.port)
    broker = broker or settings.mqtt_url or "mqtt://127.0.0.1:1883"
    count = devices or len(found)
    console.print(f"simulating {count} devices / 模拟 {count} 台设备 → {broker if via == 'mqtt' else url} "
                  "(Ctrl-C stops / 按 Ctrl-C 停止)")
    stats = simulator.run(found, via=via, url=url, broker=broker, count=devices, rate=rate, duration=duration,
                          seed=seed, console=console)
    if stats.sent and not stats.ok:
        err_console.print(f"[red]nothing was acknowledged / 没有读数被接收: {stats.last_error}[/red]")
        raise typer.Exit(1)


@sensing_app.command("things")
def things(
    kind: Annotated[str | None, typer.Option(help="air, water, pipe, traffic, bus, wearable, ...")] = None,
    status: Annotated[str | None, typer.Option(help="online, offline or alerting")] = None,
    department: Annotated[str | None, typer.Option(help="a department code (its subtree)")] = None,
    q: Annotated[str | None, typer.Option(help="name or device key contains")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    as_user: As = None,
) -> None:
    """List devices with their status and last contact (设备列表)."""
    with cli_session() as (_, session):
        page = timeseries.things_overview(session, _actor(session, as_user), status=status, kind=kind,
                                          department=department, q=q, limit=limit)
        counts = timeseries.status_counts(session, _actor(session, as_user))
    table = Table("id", "name / 名称", "kind / 类型", "department / 部门", "status / 状态",
                  "last seen / 最后上报", "streams / 数据流",
                  caption=f"{page['total']} devices / 台设备; "
                  + ", ".join(f"{k} {v}" for k, v in counts.items()))
    colour = {"online": "green", "offline": "dim", "alerting": "red"}
    for t in page["items"]:
        table.add_row(str(t["id"]), t["name"], t["kind"] or "", t["department"]["name"],
                      f"[{colour.get(t['status'], 'white')}]{t['status']}[/]", t["last_seen_at"] or "—",
                      str(len(t["datastreams"])))
    console.print(table)


@sensing_app.command("credentials")
def credentials(
    thing_id: Annotated[int, typer.Argument(help="the Thing's id")],
    save: Annotated[bool, typer.Option(help="also add the device to the devices file, for the simulator")
                    ] = False,
    devices_file: DevicesFile = None,
    as_user: As = None,
) -> None:
    """Issue (or replace) a device's key and secret; the secret is shown once (签发设备凭证)."""
    with cli_session() as (settings, session):
        thing = session.get(Thing, thing_id)
        if thing is None:
            raise NotFound("Thing / 设备", thing_id)
        key, secret = service.device_issue(session, _actor(session, as_user), thing)
        session.commit()
        device = device_of(session, thing, secret)
    console.print(f"device key / 设备密钥: [bold]{key}[/bold]")
    console.print(f"secret / 口令: [bold]{secret}[/bold]  (shown once; the old secret no longer works / "
                  "仅显示一次，旧口令立即失效)")
    if save:
        path = devices_file or Path(settings.data_dir) / simulator.DEVICES_FILE
        simulator.merge_devices(path, [device])
        console.print(f"saved to / 已写入 {path}")


def device_of(session: Session, thing: Thing, secret: str) -> simulator.Device:
    """The simulator's view of a Thing: streams by their `properties.code` (else the kind's guess)."""
    session.refresh(thing)
    loc = thing.locations[0] if thing.locations else None
    streams = tuple(simulator.Stream(d.id, str((d.properties or {}).get("code", "")))
                    for d in sorted(thing.datastreams, key=lambda d: d.id))
    return simulator.Device(thing.device_key or "", secret, thing.id, thing.name, thing.kind or "", streams,
                            loc.lon if loc else None, loc.lat if loc else None)


@sensing_app.command("retention")
def retention() -> None:
    """Delete raw readings older than each stream's retention period now; rollups stay (保留期清理)."""
    with cli_session() as (_, session):
        deleted = timeseries.apply_retention(session, ingest.now_ms())
        names = {i: n for i, n in session.execute(select(Datastream.id, Datastream.name)
                                                  .where(Datastream.id.in_(list(deleted))))}
    if not deleted:
        console.print("nothing to delete / 无过期数据")
        return
    table = Table("datastream / 数据流", "deleted / 删除",
                  caption=f"{sum(deleted.values()):,} readings in all / 共删除")
    for ds, n in sorted(deleted.items()):
        table.add_row(f"{ds} {names.get(ds, '')}", f"{n:,}")
    console.print(table)


@sensing_app.command("broker-auth")
def broker_auth(
    directory: Annotated[Path, typer.Argument(help="where to write cityos.passwd and cityos.acl",
                                              file_okay=False)],
    devices_file: DevicesFile = None,
    service_user: Annotated[str | None, typer.Option(help="CityOS's own broker user (default: "
                                                          "mqtt_username, else cityos-ingest)")] = None,
    service_password: Annotated[str | None, typer.Option(help="its password (default: mqtt_password)")
                                ] = None,
) -> None:
    """Write Mosquitto's password and ACL files for CityOS and every device (MQTT 设备接入凭证).

    Devices whose secrets are in the devices file (the demo's) get their broker password from it;
    others need broker credentials kept with their Thing. Send Mosquitto SIGHUP afterwards."""
    from cityos.sensing import broker

    with cli_session() as (settings, session):
        path = devices_file or Path(settings.data_dir) / simulator.DEVICES_FILE
        hashes = {d.key: broker.mosquitto_hash(d.secret) for d in simulator.load_devices(path)} \
            if path.exists() else {}
        user = service_user or settings.mqtt_username or broker.SERVICE_USER
        password = service_password or settings.mqtt_password
        password_file, acl_file = broker.write_auth_files(session, directory, service_user=user,
                                                          service_password=password, hashes=hashes)
        users = sum(1 for line in password_file.read_text(encoding="utf-8").splitlines() if line)
    console.print(f"{users} broker users / 个账号 → {password_file}\nACL / 访问控制 → {acl_file}")
    if not password:
        console.print(f"[yellow]no password for {user}: CityOS itself cannot sign in (--service-password or "
                      "CITYOS_MQTT_PASSWORD) / 未设置服务账号口令[/yellow]")
    console.print("mosquitto.conf: password_file, acl_file, allow_anonymous false; then SIGHUP / "
                  "配置后发送 SIGHUP")


def register(app: typer.Typer) -> None:
    """Mount `cityos simulate` and `cityos sensing ...` on the top-level command."""
    app.command("simulate")(simulate)
    app.add_typer(sensing_app, name="sensing")
