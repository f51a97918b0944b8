# Shortcuts; each target is one command you can also run by hand (dev.py makes .venv and installs into it).
.PHONY: serve check test

serve:  ## the README's start command
	python3 dev.py serve

check:  ## ruff + mypy (scripts/check)
	python3 dev.py check

test:  ## the README's test command
	python3 dev.py test
