"""``python -m geolift`` runs the command line (useful where the script is not on PATH)."""

from geolift.cli import main

main()
