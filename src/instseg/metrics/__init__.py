"""Scores: the CVPPP metrics and the DSB2018 AP per image, and the reports of many images."""
