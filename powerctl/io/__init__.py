"""Device I/O: Modbus (pymodbus) and MQTT transports feeding the process image."""
