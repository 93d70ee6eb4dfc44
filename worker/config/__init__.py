"""The configuration: one TOML file plus ``PROCESSOR_*`` overrides, validated once at start.

- ``settings``  ``Settings`` and its sections: what a valid whole is
- ``values``    one key's value -> its field's type; ``PROCESSOR_<SECTION>_<KEY>`` overrides (stdlib only)
"""
