"""What `avl benchmark` concludes: its spec, paired statistics, claim verdicts and report (stages/benchmark*.py run
the studies; the speed benchmarks are pipeline/bench/)."""
