"""Pipeline files shipped with diffraflow."""
