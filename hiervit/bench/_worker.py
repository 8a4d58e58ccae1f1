"""Worker process for one op-benchmark row: `python -m hiervit.bench._worker SPEC_JSON LABEL` prints one JSON line."""
import json
import sys

from .ops import measure

if __name__ == '__main__':
    print(json.dumps(measure(json.loads(sys.argv[1]), sys.argv[2])))
