.PHONY: run test bench
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
bench:
	.venv/bin/python bench/relay_bench.py --seconds 30 --out bench/out/relay.json
