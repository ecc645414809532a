"""The netfault agent: runs inside every host and executes socket, process, sysctl and capture requests.

It speaks JSON lines on stdin/stdout (see docs/design.md, "Agent protocol"). Inside hosts this package is
`netfault_agent`; in the repository it is `harness.agent`: it uses relative imports only, stdlib and
pyroute2 0.7.2.
"""
