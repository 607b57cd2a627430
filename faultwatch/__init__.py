"""faultwatch: few-label bearing fault diagnosis from the workstation to the plant floor."""

__version__ = "0.1.0"
