"""Pure, typed core of the pipeline handlers; ``main.py`` only adapts requests to it."""
