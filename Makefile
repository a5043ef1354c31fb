.PHONY: setup test lab fmt bench compose-lab install
setup:
	./scripts/setup.sh
test:
	./scripts/test.sh
lab: setup
	.venv/bin/ftpalg lab
compose-lab:
	./scripts/compose_lab.sh
fmt: setup
	.venv/bin/ruff format ftpalg tests bench
	.venv/bin/ruff check --fix ftpalg tests bench

bench: setup
	.venv/bin/python -m bench

# production: a private virtualenv in /opt/ftpalg, /usr/local/bin/ftpalg, the unit, the config
install:
	./scripts/install.sh
