"""The web page served at ``/`` (``index.html``, ``app.css``, ``app.js``): plain HTML, CSS and JavaScript with no
build step, shipped as package data. It only calls the public HTTP API, with the user's key from the browser's
session storage; it holds no logic the API does not already have."""
