"""On-device detector daemon for a Raspberry Pi (needs only edge_yolov9)."""
