"""Run Vidur's CLI simulation with phase timings (executed by the Vidur venv's python).

    .venv-vidur/bin/python benchmarks/vidur_runner.py <vidur.main CLI flags>

Does exactly what ``python -m vidur.main`` does (parse the same flags, seed, build the
``Simulator``, ``run()``), and prints ONE JSON line prefixed ``VIDUR_TIMINGS`` with wall
times in seconds:

  import_s   importing vidur (its package imports wandb, sklearn, pandas, ...)
  init_s     building the Simulator: config, cluster, execution-time predictor (train or load
             the sklearn models and their prediction tables from the cache dir), trace read
  loop_s     the event loop (``Simulator.run`` minus writing the output)
  output_s   writing the metrics files (request_metrics.csv, ...)
  cpu_s, loop_cpu_s, output_cpu_s   CPU time of this process: all, event loop, output
  output_dir where Vidur wrote them (its metrics_config output_dir + a timestamp folder)

Nothing of Vidur is changed: the timing wraps its own calls. This file imports only the
standard library and vidur, so it runs in Vidur's environment, never servetune's.
"""

import json
import sys
import time

PREFIX = "VIDUR_TIMINGS"


def main() -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    from vidur.config import SimulationConfig
    from vidur.simulator import Simulator
    from vidur.utils.random import set_seeds

    t1 = time.perf_counter()
    config = SimulationConfig.create_from_cli_args()
    set_seeds(config.seed)
    simulator = Simulator(config)
    t2, c2 = time.perf_counter(), time.process_time()

    write_output = simulator._write_output
    spent = {"output_s": 0.0, "output_cpu_s": 0.0}

    def timed_write_output() -> None:
        s, c = time.perf_counter(), time.process_time()
        write_output()
        spent["output_s"] += time.perf_counter() - s
        spent["output_cpu_s"] += time.process_time() - c

    simulator._write_output = timed_write_output
    simulator.run()
    t3, c3 = time.perf_counter(), time.process_time()
    out = {
        "import_s": t1 - t0,
        "init_s": t2 - t1,
        "loop_s": (t3 - t2) - spent["output_s"],
        "output_s": spent["output_s"],
        "cpu_s": c3 - c0,
        "loop_cpu_s": (c3 - c2) - spent["output_cpu_s"],
        "output_cpu_s": spent["output_cpu_s"],
        "output_dir": config.metrics_config.output_dir,
    }
    sys.stdout.flush()
    print(f"{PREFIX} {json.dumps(out)}", flush=True)


if __name__ == "__main__":
    main()
