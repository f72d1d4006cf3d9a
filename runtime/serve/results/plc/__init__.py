"""The PLC: the handshake's state machine (no transport in it) and its two transports, an OPC UA server serve
hosts and Modbus TCP registers serve writes and polls, plus OPC UA writes to a PLC's own nodes."""
