"""The top of the data flow: the Dash dashboard and the JSON API, reading through service/ and
store/; nothing here fetches from an exchange itself."""
