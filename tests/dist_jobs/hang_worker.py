"""msrun worker that never finishes: the harness must kill it at its time limit (no MindSpore)."""
import os
import time

print(f"HANG-WORKER pid={os.getpid()} sleeping", flush=True)
time.sleep(3600)
