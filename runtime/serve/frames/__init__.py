"""Frames in: where a frame comes from (a camera, a stream, a folder, a GigE camera), the capture thread that
reads it with reconnects, the triggers that ask for one, and the part-id codes read from it."""
