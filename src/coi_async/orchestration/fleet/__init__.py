"""The fleet at a glance: every session's resources in one request (`coi top`), live limits
(`coi limit`) and one stream of what happens to the sessions (`coi events`)."""
