"""dividends: hosts the rules engine — plans, grants, pools, the equity pool and price,
forced exits and the daily settlement.  Every posting in the platform is computed here
and sent to the wallet to book."""
