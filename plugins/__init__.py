"""sllmx's built-in plugins, loaded through the ``sllmx`` entry-point group like any third-party plugin."""
