"""The device farm's rules apart from HTTP: who may register a device
(``ownership``) and how a device is retired (``retire``)."""
