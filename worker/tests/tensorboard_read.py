"""Reads a directory of TensorBoard event files the way TensorBoard does and prints JSON.

Used by worker/tests/loggers.rs (run with the interpreter in ANVIL_PYTHON, which has the
`tensorboard` package of scripts/requirements-test.txt):

    python tensorboard_read.py DIR

Every event file is first read record by record with tensorboard's own TFRecord reader, which
raises on a bad length or data checksum (TensorBoard itself would silently stop reading the
file there); then an EventAccumulator loads the directory, purging orphaned steps at SessionLog
START events, and its scalars are printed per tag.
"""

import json
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow


def read_file(path):
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    events = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            break
        events.append(event_pb2.Event.FromString(reader.record()))
    return {
        "name": os.path.basename(path),
        "records": len(events),
        "first_file_version": events[0].file_version if events else None,
        "session_starts": [
            e.step
            for e in events
            if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START
        ],
    }


def main(directory):
    names = sorted(n for n in os.listdir(directory) if "tfevents" in n)
    files = [read_file(os.path.join(directory, n)) for n in names]
    acc = EventAccumulator(directory, size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }
    print(json.dumps({"files": files, "file_version": acc.file_version, "scalars": scalars}))


if __name__ == "__main__":
    main(sys.argv[1])
