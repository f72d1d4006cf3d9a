"""The detect room: frames in, a Result out.

frames -> preprocess -> encoders (image; text with its tokenizer and prompt
text) -> scoring (language and reference maps) -> regions (SAM) -> Result,
drawn by overlay. `Detector` ties them together; `python -m runtime.detect` is
the batch command.
"""
