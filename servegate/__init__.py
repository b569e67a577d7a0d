"""The top of the application: the `servegate` command and the management API's HTTP
client. It imports every other package and no package imports it."""
