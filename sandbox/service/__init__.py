"""The local workspace service: what Azure ML has behind ``ml.azure.com`` (run history, execution, studio).

``store`` keeps run history in SQLite on the stack's volume; ``executor`` queues runs per compute
target and runs them through ``sandbox.local_runner``; ``api`` is the JSON API the facade's
``client`` speaks; ``pages`` renders the run list and the run page. Started by docker compose
(``python -m sandbox.service``). Importing this package imports no web framework.
"""
