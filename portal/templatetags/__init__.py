"""Template tags shared by the portal's server-rendered pages."""
