"""Results out: the result record and its audit block, the results log, and every sink that carries a verdict
on (webhook, MQTT, the NG image store, and the PLC transports in plc/)."""
