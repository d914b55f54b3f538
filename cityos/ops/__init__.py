"""The operations center (城市运行管理中心): vital signs, early warning, emergency command, the
big screen, and the plan's own indicators and projects. An app: it reads the engines through
their `service` modules."""
