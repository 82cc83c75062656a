"""The command line (a door): `python -m chronoprice COMMAND`, or `chronoprice COMMAND` once the
package is installed. parser.py builds every command's flags; main.py runs them; evaluate.py and
models.py hold the evaluate and model-registry command groups."""
