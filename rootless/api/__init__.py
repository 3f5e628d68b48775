"""The Docker Engine API service (``rootless system service``): a face, like the command line,
calling the same engine functions.  http.py (requests and answers), router.py (paths and API
versions), server.py (the socket, peer checks, the connection loop) and one module of handlers
per kind of object."""
