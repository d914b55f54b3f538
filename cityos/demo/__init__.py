"""The demo city (演示城市): Jilin City with its districts, bureaus and users (`cityos demo`)."""
