"""The analysts' console (``gateway web``): a server-rendered web app over the
quarantine store. Flask, Jinja2 templates, no front-end build; its Python
dependencies are the ``[web]`` extra. Modules that the command line also
uses (:mod:`gateway.web.preview`, :mod:`gateway.web.console`) import none of
the web framework."""
