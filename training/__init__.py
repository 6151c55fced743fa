"""Fitting and evaluating routers from labelled logs. Imports `features` and `models`; never
`serving` or `promptroute`."""
