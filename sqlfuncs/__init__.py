"""The google_ml_integration extension's SQL files (a package only so that installs ship them)."""
