"""Writes the TensorBoard reference of ctrcl's event writer with TensorBoard's own code, then
reads it back with TensorBoard's own reader.

crates/ctrcl-train/tests/data/tensorboard/reference.tfevents: a file-version event and three
scalar events (two tags at step 1, one at step 7; fixed wall times), written by TensorBoard's
EventFileWriter (record framing, masked CRC-32C) from its Event/Summary protos.  ctrcl's
`tensorboard` module must write the same bytes for the same events (tests/tensorboard.rs).
EventAccumulator then loads the file and must see the scalars.

    python3 -m venv /tmp/tb && /tmp/tb/bin/pip install tensorboard==2.21.0
    /tmp/tb/bin/python scripts/reference/tensorboard_events.py
"""
import os
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

OUT = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-train/tests/data/tensorboard")
EVENTS = [
    Event(wall_time=1764900000.25, step=0, file_version="brain.Event:2"),
    Event(wall_time=1764900001.5, step=1, summary=Summary(value=[
        Summary.Value(tag="cnn/ce", simple_value=1.4678266048431396),
        Summary.Value(tag="lr/transformer", simple_value=0.001),
    ])),
    Event(wall_time=1764900009.0, step=7, summary=Summary(value=[
        Summary.Value(tag="val/cnn/mean_dice", simple_value=0.8125),
    ])),
]

os.makedirs(OUT, exist_ok=True)
path = os.path.join(OUT, "reference.tfevents")
with open(path, "wb") as f:
    writer = RecordWriter(f)
    for event in EVENTS:
        writer.write(event.SerializeToString())
    writer.flush()

# TensorBoard's reader: a folder holding the file under an events-file name.
with tempfile.TemporaryDirectory() as d:
    with open(path, "rb") as src, open(os.path.join(d, "events.out.tfevents.1.ctrcl"), "wb") as dst:
        dst.write(src.read())
    acc = EventAccumulator(d)
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    assert tags == ["cnn/ce", "lr/transformer", "val/cnn/mean_dice"], tags
    (ce,) = acc.Scalars("cnn/ce")
    assert ce.step == 1 and abs(ce.value - 1.4678266048431396) < 1e-7, ce
    (dice,) = acc.Scalars("val/cnn/mean_dice")
    assert dice.step == 7 and dice.value == 0.8125 and dice.wall_time == 1764900009.0, dice
print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes; EventAccumulator reads", tags)
