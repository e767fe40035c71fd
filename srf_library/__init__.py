"""Bundled sensor spectral response curves (data only; read by geolift.srf)."""
