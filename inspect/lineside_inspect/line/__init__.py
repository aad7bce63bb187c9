"""Line integration: the PLC handshake (OPC UA, Modbus TCP) and inspection events
(MQTT). Everything here hangs off the inspection service and the store; nothing below
(service, store, cameras) imports it."""
