"""ftpalg: a transparent FTP Application Layer Gateway for Linux NAT gateways."""

__version__ = "0.1.0"
