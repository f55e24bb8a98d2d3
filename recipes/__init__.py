"""Recipe data, no code: deployment target profiles under ``targets/`` and compression recipes under
``compress/`` (YAML).

This folder stays at the top of the repository; the packaging (pyproject.toml) installs it as
``rmtdeploy.recipes``, so wheels and editable installs alike carry the YAMLs, which
:mod:`rmtdeploy.targets` reads with ``importlib.resources``.
"""
