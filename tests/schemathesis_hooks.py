"""Schemathesis hooks for the API fuzz test (loaded through SCHEMATHESIS_HOOKS=tests.schemathesis_hooks).

Searches the fuzzer manages to create are stored but never started: a started search launches a real
runner process (Ray, proxy training) per generated config.
"""

import schemathesis


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and "config" in body:
        body["start"] = False
    return body
