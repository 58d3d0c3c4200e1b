"""A stand-in for the ``esp32`` module: the internal temperature sensor."""


def mcu_temperature():
    return 41
