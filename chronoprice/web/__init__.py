"""The top of the data flow: the Dash dashboard and the JSON API, reading through service/ and
store/; nothing here fetches from an exchange itself."""

import sys

# Dash imports IPython for its notebook display whenever IPython is installed: 20 MB resident in
# every server, scheduler and CLI process that loads the dashboard, for a notebook none of them
# is. A process already inside IPython keeps it (setdefault); elsewhere Dash sees it as absent.
sys.modules.setdefault("IPython", None)
