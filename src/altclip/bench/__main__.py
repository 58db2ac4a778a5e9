"""The benchmark's worker: ``python -m altclip.bench ENGINE CHECKPOINT DEVICE WORKLOAD_JSON PROBE_OUT`` measures one
engine in a fresh process and prints its results as JSON."""

import json
import sys

from altclip.bench.measure import Workload, run_engine

engine, checkpoint, device, workload, probe_out = sys.argv[1:6]
print(json.dumps(run_engine(engine, checkpoint, device, Workload(**json.loads(workload)), probe_out)))
