"""Built-in architectures, each registered through the `instseg` entry points like any plugin."""
