# Shortcuts; each target is one command you can also run by hand.
.PHONY: check test

check:  ## ruff + mypy (scripts/check)
	scripts/check

test:  ## the README's test command
	python -m pytest -q test
