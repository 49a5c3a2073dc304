"""What a securityContext costs a process-runtime container's start: the agent's own command
line for a container (the exit-recording shim, `true` as the command) run as is, through
setpriv (another uid, groups, the default capability bounding set, no_new_privs), and through
setpriv after the RuntimeDefault seccomp filter (agent.SECCOMP_EXEC: a `python3 -S -c` start).
No lab: the command lines are the agent's, run on this machine (root). Medians of N runs each,
alternating. Last line: the added milliseconds per start with setpriv and seccomp.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

from gitorch.nodes import agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: setpriv changes the uid")
    exit_file = os.path.join(tempfile.mkdtemp(prefix="podsec-bench-"), "c.exit")
    plain = agent.SecuritySpec.parse({"runAsUser": 200001, "runAsGroup": 200001, "groups": [200002],
                                      "noNewPrivs": True}, "bench")
    filtered = agent.SecuritySpec.parse({"runAsUser": 200001, "runAsGroup": 200001, "groups": [200002],
                                         "noNewPrivs": True, "seccomp": "RuntimeDefault"}, "bench")
    assert plain is not None and filtered is not None
    lines = {
        "as is": agent.recording_exit(["true"], exit_file),
        "setpriv": agent.recording_exit(
            [*agent.setpriv_argv(plain, agent.resolve_identity(plain, "b", {})), "true"], exit_file),
        "setpriv + seccomp": agent.recording_exit(
            [*agent.setpriv_argv(filtered, agent.resolve_identity(filtered, "b", {})), "true"],
            exit_file),
    }
    times: dict[str, list[float]] = {k: [] for k in lines}
    for _ in range(args.runs):
        for name, argv in lines.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
            with open(exit_file) as fh:
                assert fh.read().strip() == "0", name
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    for name, ms in median.items():
        print(f"{name:>18}: median {ms:6.2f} ms per start ({args.runs} runs)")
    print(f"added per start: setpriv {median['setpriv'] - median['as is']:.2f} ms, "
          f"setpriv + seccomp {median['setpriv + seccomp'] - median['as is']:.2f} ms")


if __name__ == "__main__":
    main()
