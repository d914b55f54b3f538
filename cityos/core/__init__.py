"""Platform core (平台底座): settings, storage, identity, access, audit, encryption, web shell.

The core imports no other CityOS package; engines and apps build on it.
"""
