"""CLI verbs. Each module is thin: parse options, build a config, call the stage, print a summary."""
