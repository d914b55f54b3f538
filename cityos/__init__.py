"""CityOS: one platform for a city's data hub, map, sensors, cases and operations center."""

__version__ = "0.1.0"
