"""The reference customer screen: static HTML, CSS and JavaScript, no build step, no external
resources. markd serves these files at ``/screen/`` on its loopback TCP listener when
``[api] screen = true`` (:mod:`markd.api.screen`); ``docs/api.md``, "The customer screen",
walks through the script. Integrators restyle it, or read it as an example of the API."""
