"""``python -m dpa_omf.bench {ot,train,rollout,...}``: the benchmarks' entry point (dpa_omf/tools/bench/cli.py)."""

from dpa_omf import allocator

if __name__ == "__main__":
    allocator.ensure()  # before the benchmarks import JAX: glibc reads its malloc settings only at start

from dpa_omf.tools.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
